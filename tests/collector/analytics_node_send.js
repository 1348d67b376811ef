// Sends events with the real @segment/analytics-node (pinned in package.json), unmodified.
// Reads one JSON object on stdin: {"host", "writeKey", "events": [Segment events], "settings": {...},
// "timeoutMs"}; calls the SDK method named by each event's type, waits for every event's callback
// and closeAndFlush, then prints {"messageIds": [...], "failures": [{"messageId", "error"}]}.
// Used by tests/collector/sdks.py (send_analytics_node).
'use strict'
const { Analytics } = require('@segment/analytics-node')

const METHODS = { track: 'track', identify: 'identify', page: 'page', screen: 'screen', group: 'group', alias: 'alias' }

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = []
    process.stdin.on('data', (c) => chunks.push(c))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

async function main() {
  const input = JSON.parse(await readStdin())
  const analytics = new Analytics({ writeKey: input.writeKey, host: input.host, ...(input.settings || {}) })
  const failures = []
  const messageIds = new Array(input.events.length)
  const delivered = input.events.map((event, i) => new Promise((resolve) => {
    const { type, ...params } = event
    const method = METHODS[type]
    if (!method) throw new Error(`analytics-node has no method for type ${type}`)
    analytics[method](params, (err, ctx) => {
      messageIds[i] = ctx ? ctx.event.messageId : params.messageId
      if (err) failures.push({ messageId: messageIds[i], error: String((err && err.message) || err) })
      resolve()
    })
  }))
  // closeAndFlush sends what is batched now (not after flushInterval) and waits for every
  // event's delivery or failure; past the timeout it aborts, failing what is left.
  await analytics.closeAndFlush({ timeout: input.timeoutMs || 30000 })
  await Promise.all(delivered)
  process.stdout.write(JSON.stringify({ messageIds, failures }) + '\n')
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
