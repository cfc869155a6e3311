"""Replication and storage: Litestream, the LTX reader, restore, object stores, manifests, leases, archives.

boto3 is imported only by ``objectstore``; the ``litestream`` binary is run only by ``litestream``.
"""
