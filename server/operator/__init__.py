"""The operator's side of a deployment: the federation folder and PKI, starting the server,
enrollment, Flower's Control API, submitting runs.
"""
