"""Training targets of RoI heads (``ProposalTargetLayer``)."""
