"""The wire of fedlora's own gRPC service, and nothing else.

- ``fedlora/enroll/v1/enroll.proto``: node enrollment (``Enrollment.Enroll``), with its generated
  modules committed (``make protos`` regenerates them; a test checks that nothing changes);
- ``tokens.py``: the invitation token format, which the operator's side writes and the node parses.

Training traffic is Flower's own gRPC Fleet API. The enrollment service lives with the operator
(``server/operator/enrollment/``), the join client with the node (``client/node/enroll.py``).
"""
