"""The model repository: its layout on disk, the config schema, and the models' lifecycle."""
