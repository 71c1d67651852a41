"""The TokenButler Studio page: Gradio layout, event handlers and plotly figures (no model math)."""
