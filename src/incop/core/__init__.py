"""The lowest layer: masks and their enforcement, sparsity and MACs, batch types, the training
step, the process group's view, registries and options. It imports only torch (and
:mod:`incop.errors`), so every layer above may use it."""
