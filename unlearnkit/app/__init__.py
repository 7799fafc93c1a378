"""The app: the command line, `reproduce` (papermill) and the notebooks' setup. The top layer."""
