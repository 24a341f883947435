// Compiled with one layer's include directories, COX_PROBE_HEADER names a
// header of a layer above it: the layering test passes when this fails to
// find it.
#include COX_PROBE_HEADER
