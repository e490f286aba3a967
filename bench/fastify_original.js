// Baseline of bench/run.py: the original TicketBlitz's queued route, rebuilt as it is written. Fastify 5,
// POST /api/book-async -> ONE kafkajs producer.send (acks = all: the kafkajs default, acks -1) of the
// request body to a topic of its own on the local Kafka, then 202 {"status": "Pending"}. Nothing else:
// no validation, no seat map, no consumer (that is all the original's API did on this route).
// Installed by run.py with `npm install --prefix bench/.node fastify@5 kafkajs`.
//
//   node bench/fastify_original.js PORT BOOTSTRAP TOPIC
//
// Listens on 127.0.0.1 only. Creates TOPIC (6 partitions, like the server's booking topic) before it
// listens, prints "listening" when ready; on SIGTERM/SIGINT it stops listening, disconnects the producer,
// deletes TOPIC and exits 0 (1 when the clean-up failed).
'use strict'

const path = require('node:path')
const modules = path.join(__dirname, '.node', 'node_modules')
const fastify = require(path.join(modules, 'fastify'))({ logger: false })
const { Kafka, logLevel } = require(path.join(modules, 'kafkajs'))

const port = Number(process.argv[2] || 3000)
const bootstrap = process.argv[3] || '127.0.0.1:9092'
const topic = process.argv[4] || `bench-original-${process.pid}`
const PARTITIONS = 6

const kafka = new Kafka({ clientId: `bench-original-${process.pid}`, brokers: [bootstrap], logLevel: logLevel.ERROR })
const admin = kafka.admin()
const producer = kafka.producer()

fastify.post('/api/book-async', async (request, reply) => {
  const body = request.body || {}
  await producer.send({
    topic,
    messages: [{ key: String(body.eventId ?? ''), value: JSON.stringify(body) }]
  }) // acks: -1 (all in-sync replicas), the kafkajs default
  reply.code(202)
  return { status: 'Pending' }
})

let stopping = false
async function stop () {
  if (stopping) return
  stopping = true
  let code = 0
  for (const step of [() => fastify.close(), () => producer.disconnect(),
    () => admin.deleteTopics({ topics: [topic], timeout: 10000 }), () => admin.disconnect()]) {
    try { await step() } catch (err) { console.error(err); code = 1 }
  }
  process.exit(code)
}

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, stop)

async function main () {
  await admin.connect()
  await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS }], waitForLeaders: true })
  await producer.connect()
  await fastify.listen({ host: '127.0.0.1', port })
  console.log(`listening on http://127.0.0.1:${port}, topic ${topic} on ${bootstrap}`)
}

main().catch(async (err) => {
  console.error(err)
  try { await admin.deleteTopics({ topics: [topic], timeout: 10000 }) } catch (_) {}
  process.exit(1)
})
