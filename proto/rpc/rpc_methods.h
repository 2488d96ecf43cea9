/* gRPC method paths ("/dpod.v1.Coordinator/GetJob") taken from protoc-c's service descriptors, so that
 * the server's registration, dpoctl and the worker's reporter cannot disagree with the contract. */
#ifndef DPOD_RPC_METHODS_H
#define DPOD_RPC_METHODS_H

#include <protobuf-c/protobuf-c.h>

/* The path of `method` of service `svc` ("/" package.Service "/" Method), or NULL if the service has no
 * such method. The string is built once and lives as long as the process; thread-safe. */
const char *rpc_method_path(const ProtobufCServiceDescriptor *svc, const char *method);

#endif
