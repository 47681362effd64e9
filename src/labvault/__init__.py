"""labvault: the patient-records system of a network of clinical laboratories."""

__version__ = "0.1.0"
