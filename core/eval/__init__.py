"""Every policy across a grid of budgets: perplexity relative to dense with bootstrap 95% intervals
(teacher-forced, and real decoding as a check), hit accuracy, attention recall, the co-reference and
entities tasks, achieved sparsity in K/V rows and in bytes. Writes JSON, plotly HTML, a PNG and a
markdown table under assets/results/; finished cells are cached (keyed by data, policy options,
weights and a digest of the measuring code) so an interrupted run resumes.

Data: chunks of held-out text (or text from outside every training source) from every source in
turn, at most two touching one document. Two protocols, each the regime of some method:
1. a short dense prompt (64 tokens), then every later token scored, each row reading its budget
   (decoding's regime: query-aware selection at every step);
2. a long dense prompt (768 tokens), then the rest of the chunk scored (prompt compression's regime:
   SnapKV and H2O compress the prompt at its end). The prompt is prefilled once for every method.
Tasks are run with the question decoded token by token and with the question inside the prompt
(SnapKV's setting), optionally with the filler scaled to a length in tokens.
"""

# Modules, bottom up: config (what to measure), cache (finished cells and their keys), intervals (the
# bootstrap), frontier (quality against bytes read, and its lower envelope), measure (one sequence's cells),
# stages (cells over the data, reduced per policy x budget; a whole run), report (markdown tables and figure
# panels, pure), figures (plotly, PNG and the files), cli.
