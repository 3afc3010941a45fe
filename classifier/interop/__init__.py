"""Result formats for other systems: FHIR R4 (fhir.py) and HL7 v2 (hl7.py).

Pure functions of a specimen and its differential (from the selectors); they
read nothing from the database themselves and decide no access rules.
"""
