"""Registry domain logic: plain async Python over a Store interface, no grpc, no SQL."""
