"""Live processing: ``cryosnake live`` watches a microscope's output and runs the workflow
as movies arrive (:mod:`.watch`, :mod:`.staging`, :mod:`.ledger`, :mod:`.session`,
:mod:`.command`)."""
