"""The node admin's side of a deployment: the node folder, joining a federation, the SuperNode."""
