package main

import (
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/watch"
)

// loadCheckpoint reads the state checkpoint of a previous run on this node
// (wopts.CheckpointPath) with the same --service-proxy-name. A missing,
// corrupt, foreign or outdated file is logged and ignored: start-up then
// waits for the API server as without a checkpoint. It is never fatal.
func loadCheckpoint(wopts watch.Options, log zerolog.Logger) *watch.Checkpoint {
	path := wopts.CheckpointPath
	c, err := watch.LoadCheckpoint(wopts)
	switch {
	case errors.Is(err, watch.ErrNoCheckpoint):
		log.Info().Str("path", path).Msg("no state checkpoint yet; services are served once the API server answers")
		return nil
	case err != nil:
		log.Warn().Err(err).Msg("state checkpoint ignored; services are served once the API server answers")
		return nil
	}
	log.Info().Str("path", path).Int("ports", len(c.Ports)).Time("written", c.Written).
		Dur("age", time.Since(c.Written).Round(time.Second)).Msg("state checkpoint loaded")
	return c
}
