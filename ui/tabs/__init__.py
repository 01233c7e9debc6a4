"""One module per tab of the app; each exports a class that builds the tab's components (inside the
app's ``gr.Tabs``) and wires its events. Imports ``ui``'s shared modules, ``trainer`` and ``adapters``."""
