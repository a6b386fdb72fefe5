"""What puts work in: bucket listings, manifests, storage events and the listener,
de-duplication and bulk publishing of job messages."""
