"""The curation UI: a Gradio app over plain handler functions; it renders what curation/ returns."""
