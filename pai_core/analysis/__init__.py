"""From recorded activations to named features: record (Parquet), analyse (ranking, top frames, pictures),
label (Gradio app writing labels.json, read by ``pai_core.pipeline.load_labels``)."""
