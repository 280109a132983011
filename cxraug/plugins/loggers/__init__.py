"""Built-in logger plugins (experiment trackers for ``--logger``)."""
