"""Node enrollment beside the SuperLink: the registry of invitations and nodes, and the gRPC
service (torch-free).
"""
