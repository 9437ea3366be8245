package health

import (
	"os"
	"testing"

	"github.com/uproxy/uproxy/integration/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
