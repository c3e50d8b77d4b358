"""ControlNet: model code (``model``) and nodes (``nodes``)."""
