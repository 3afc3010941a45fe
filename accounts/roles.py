"""Role names. Roles are Django groups, created by a data migration."""

TECHNOLOGIST = "Technologist"
REVIEWER = "Reviewer"
ALL_ROLES = (TECHNOLOGIST, REVIEWER)
