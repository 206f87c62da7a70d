// Readiness check of the test cluster (scripts/test-broker): exits 0 once the cluster
// has the expected number of brokers, creates a topic replicated to all of them, takes
// an acks=all produce (min.insync.replicas=2) and commits a consumer group offset (so
// the group coordinator and __consumer_offsets are up before a test needs them).
//
//   java -cp "kafka jars/*:compiled" TestBrokerReady BOOTSTRAP BROKERS TIMEOUT_SECONDS
//
// Exits 1 with the last error on stderr when the cluster is not ready in time.

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

class TestBrokerReady {
    static final String TOPIC = "__hifi_test_broker_ready";

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        int want = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        Throwable last = null;
        while (System.nanoTime() < deadline) {
            try {
                check(bootstrap, want);
                return;
            } catch (Exception e) {
                last = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
                Thread.sleep(500);
            }
        }
        System.err.println("the Kafka cluster at " + bootstrap + " is not ready: " + last);
        System.exit(1);
    }

    static void check(String bootstrap, int want) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        try (Admin admin = Admin.create(p)) {
            int brokers = admin.describeCluster().nodes().get(10, TimeUnit.SECONDS).size();
            if (brokers < want) {
                throw new IllegalStateException(brokers + " of " + want + " brokers registered");
            }
            try {
                admin.createTopics(List.of(new NewTopic(TOPIC, 1, (short) want)))
                        .all().get(10, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
            Properties pp = new Properties();
            pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            pp.put(ProducerConfig.ACKS_CONFIG, "all");
            pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "10000");
            pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
            pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "10000");
            try (KafkaProducer<byte[], byte[]> producer =
                    new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer())) {
                producer.send(new ProducerRecord<>(TOPIC, 0, null, "ready".getBytes()))
                        .get(10, TimeUnit.SECONDS);
            }
            admin.alterConsumerGroupOffsets(TOPIC,
                    Map.of(new TopicPartition(TOPIC, 0), new OffsetAndMetadata(0)))
                    .all().get(10, TimeUnit.SECONDS);
        }
    }
}
