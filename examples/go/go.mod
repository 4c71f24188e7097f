// For building in module mode with network access (then `go mod tidy` once). Offline,
// build.sh builds in GOPATH mode against Debian's packages and ignores this file.
module example.com/audit-gateway/examples/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
