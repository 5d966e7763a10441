"""Host-side batch assembly: retrieved candidates and reader inputs."""
