"""What gets pruned: the built-in models (``models``), the built-in datasets with their
downloads and splits (``data``), and the checks on a user's batches (``sources``)."""
