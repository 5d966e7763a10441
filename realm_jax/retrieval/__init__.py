"""Host-side retrieval shared by training and inference: initial params,
the block store and index a QA model reads, query embedding with stale
params, and the assembly of candidate and reader inputs."""
