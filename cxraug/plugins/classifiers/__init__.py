"""Built-in classifiers plugins."""
