"""Runtimes that run an exported model without torch (adamml.export): numpy, PyAV, OpenCV
and the deployment runtime only, so a deployment installs a fraction of the training stack."""
