"""Models: the backbone, freezing, augmentation and optimizer registries (no Keras at import), the model
builder, tiny_cnn and the costs. Imports only search.config, search.errors and search.data."""
