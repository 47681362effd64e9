"""FHIR R4 door: mapping between labvault records and FHIR resources, validation at the
door (``fhir.resources.R4B``), and the server logic behind ``/fhir/R4`` (docs/fhir.md).

Resources are projections of the relational core: nothing here stores FHIR JSON.
"""
