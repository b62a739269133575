"""Built-in models and data. They are presets: they go through the same code path as a user's model."""

DEFAULT_MODEL_SPEC = "mpq.models.efficientnet_lite0:build_model"
DEFAULT_DATA_SPEC = "mpq.models.efficientnet_lite0:load_views"
