"""What any controller of this operator runs on, and nothing of its domain: the work queue and
controller loop, the API client and its credentials, kopf's supervisor, leader election,
status conventions, compact copies of API objects."""
