"""Node enrollment: invitation tokens, the gRPC service beside the SuperLink, and the node's
join client. Torch-free (an import-linter contract keeps it so)."""
