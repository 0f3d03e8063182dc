"""Supply chain records for an audit: SBOM, asset inventory, vulnerability gate.

- :mod:`natkit.supply.sbom`: a CycloneDX 1.6 SBOM of the container image (its
  Python distributions and Debian packages, the image digest on top), or of
  the runtime lock file when no image is built.
- :mod:`natkit.supply.inventory`: ``natkit inventory``, one asset record in
  the FedRAMP Integrated Inventory Workbook's columns.
- :mod:`natkit.supply.vulngate`: the release gate, pip-audit findings held
  against remediation deadlines (30/90/180 days, CISA KEV due dates).

These modules use the standard library only, except where a function says so
(SBOM schema validation needs cyclonedx-python-lib, the live scan pip-audit,
both in requirements/dev.lock).
"""
