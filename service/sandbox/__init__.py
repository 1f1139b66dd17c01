"""The embedded EHR for demos and tests. Never active under `onco-exercise serve`."""
