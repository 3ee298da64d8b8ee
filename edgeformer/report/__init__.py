"""The reports edgeformer renders: text now, HTML later."""
