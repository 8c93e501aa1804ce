"""gRPC service definitions of fedlora's own services and their generated code.

Node traffic for training runs over Flower's gRPC Fleet API. fedlora's own service, node
enrollment (invitation tokens, CA pinning, key registration), is defined here as ``.proto`` files
with committed generated modules; it arrives with the deployment work (see README, "Roadmap").
"""
