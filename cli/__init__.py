"""The app layer: the ``nicheloop`` command and the demo, which compose the stages."""
