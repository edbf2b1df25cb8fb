"""Model artifacts: fetched from file://, s3:// and http(s):// sources, verified,
unpacked safely and cached by content digest (the domain's ``ArtifactSource``)."""
