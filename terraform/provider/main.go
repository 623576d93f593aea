// Command terraform-provider-weft is the Terraform provider for Weft: join
// tokens, policies and cluster connections through a seed's admin API.
package main

import (
	"context"
	"flag"
	"log"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"

	"github.com/weftmesh/weft/terraform/provider/weft"
)

// version is set at build time (-ldflags -X main.version=...).
var version = "0.1.0"

func main() {
	debug := flag.Bool("debug", false, "run the provider for a debugger (prints TF_REATTACH_PROVIDERS)")
	flag.Parse()
	err := providerserver.Serve(context.Background(), weft.New(version), providerserver.ServeOpts{
		Address:         weft.Address,
		Debug:           *debug,
		ProtocolVersion: 6,
	})
	if err != nil {
		log.Fatal(err)
	}
}
