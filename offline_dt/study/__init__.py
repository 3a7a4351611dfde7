"""The study layer: presets and the reproduce pipeline, reference rows and the report."""
