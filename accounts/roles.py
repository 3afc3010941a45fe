"""Role names. Roles are Django groups, created by a data migration."""

TECHNOLOGIST = "Technologist"
REVIEWER = "Reviewer"
# A lab information system's account: submits orders and images, reads every result, never reviews
# or signs (issue 19).
INTERFACE = "Interface"
ALL_ROLES = (TECHNOLOGIST, REVIEWER, INTERFACE)
