"""Evaluation: the weight-independent figures of ``raydino eval`` and the judges of synthetic faces."""
