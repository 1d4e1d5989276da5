"""Input pipelines: sources of labelled images, Inception preprocessing, batching."""
