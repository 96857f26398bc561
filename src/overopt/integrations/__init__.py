"""Thin adapters that bring overopt's gold monitor, alarms and mitigations into other trainers (TRL first).

They call overopt.ops and the mitigation objects the lab uses; no formula is written twice."""
