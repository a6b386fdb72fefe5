"""The pydicom encoding plugins dcmpress uses, each with its quirks beside it.

Like pydicom's own ``pixels/encoders/<plugin>.py`` modules: what one plugin needs that
pydicom's encoder interface does not say - images it must never see, a process it
must run in, an error text to classify - lives in that plugin's module.
"""
