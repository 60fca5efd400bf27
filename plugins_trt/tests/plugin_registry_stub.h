// The glue check's stand-in for libnvinfer's plugin registry (plugin_registry_stub.cpp).
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

// "namespace::name vversion" of every creator registered right now, in registration order.
std::vector<std::string> registeredCreators();
